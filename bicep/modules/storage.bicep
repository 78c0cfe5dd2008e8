// Blob Storage for Metaflow artifacts (and Airflow task logs when Airflow is
// deployed). Shared keys are off: the metadata service, flow pods and the
// user's own Metaflow client all authenticate with Entra ID.

@description('Azure region for the storage account.')
param location string

@description('Short organisation prefix used in every resource name.')
param orgPrefix string

@description('Deterministic suffix that keeps the globally unique account name unique.')
param nameSuffix string

@description('Create the airflow-logs container.')
param deployAirflow bool

@description('Name of the container that holds Metaflow artifacts.')
param metaflowContainerName string

@description('Name of the container that holds Airflow task logs.')
param airflowLogsContainerName string

@description('Redundancy of the account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_ZRS'

@description('Principal ID of the workload managed identity.')
param workloadPrincipalId string

@description('Principal ID of the deployer, who runs Metaflow flows from a laptop.')
param deployerPrincipalId string

@description('Type of the deployer principal.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'User'

@description('Tags applied to every resource.')
param tags object = {}

var blobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource account 'Microsoft.Storage/storageAccounts@2025-01-01' = {
  // checkov:skip=CKV_AZURE_35:Metaflow clients on operator laptops read and write artifacts directly; access needs Entra ID (shared keys are off)
  // checkov:skip=CKV_AZURE_59:the public endpoint is required for Metaflow clients on laptops and is guarded by Entra ID
  // checkov:skip=CKV_AZURE_206:redundancy comes from the skuName parameter (default Standard_ZRS), which checkov cannot resolve
  // checkov:skip=CKV_AZURE_43:the name is orgPrefix + 'mf' + uniqueString: 17-23 lowercase letters and digits, which checkov cannot resolve
  name: '${orgPrefix}mf${nameSuffix}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2025-01-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource metaflowContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-01-01' = {
  parent: blobService
  name: metaflowContainerName
  properties: {
    publicAccess: 'None'
  }
}

// A top-level resource with `parent:` (not a nested child) so that checkov's
// Bicep parser reads the condition.
resource airflowLogsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-01-01' = if (deployAirflow) {
  parent: blobService
  name: airflowLogsContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The account scope covers both containers, including one Airflow adds later.
resource workloadBlobRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, workloadPrincipalId, blobDataContributorRoleId)
  scope: account
  properties: {
    principalId: workloadPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
  }
}

resource deployerBlobRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(metaflowContainer.id, deployerPrincipalId, blobDataContributorRoleId)
  scope: metaflowContainer
  properties: {
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
  }
}

@description('Name of the storage account.')
output accountName string = account.name

@description('Blob service endpoint, with a trailing slash.')
output blobEndpoint string = account.properties.primaryEndpoints.blob

@description('Name of the Metaflow artifacts container.')
output metaflowContainerName string = metaflowContainer.name

@description('Name of the Airflow logs container, or empty when Airflow is off.')
output airflowLogsContainerName string = deployAirflow ? airflowLogsContainerName : ''
